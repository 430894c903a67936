"""Benchmark loaders and generators. Each task yields `TaskItem`s."""
