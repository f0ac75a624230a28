"""Training objectives: every paper equation as a pure torch function."""
