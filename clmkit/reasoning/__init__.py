"""LM-side causal reasoning: text models, prompting strategies, answer extraction, evaluation."""
