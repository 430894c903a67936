"""The exact causal engine: small modules, one concept each, networkx underneath.

    graph           DAGs from edge lists; cycle and unknown-variable errors
    dsep            d-separation and every independence a DAG implies
    equivalence     PC with an independence oracle -> CPDAG -> every DAG of the Markov class
    relations       parent / mediated cause / collider / confounder, and "in every DAG of the class"
    counterfactual  deterministic boolean SCMs; abduction -> action -> prediction
    solve           benchmark text -> engine -> answer (Corr2Cause, CounterBench, axiomatic)
    cli             `clm causal solve|generate`

Nothing here imports torch.
"""
