"""gatesearch: gated-depth residual networks, Ray Tune + Optuna recipe search, Pareto menus per device."""

__version__ = "0.1.0"
