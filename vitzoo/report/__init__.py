"""Reports generated from committed results: Pareto fronts and plots, the README's model table, the speed tables."""
