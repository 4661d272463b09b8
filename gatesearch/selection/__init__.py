"""Post-training selection: score every skip pattern, model device latency, build Pareto menus."""
