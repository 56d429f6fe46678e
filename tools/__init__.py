"""Developer tools, run from the repository root and not installed
(``python -m tools.mutation_test``)."""
