"""Strategies: predictors (what to fetch ahead) and eviction policies (what to drop), composed in a registry."""
