"""The only package that imports Ray and Optuna: search spaces, the Tune trainable, the runner."""
