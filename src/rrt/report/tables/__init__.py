"""The report's tables, one module each: a function of the loaded results to its table(s)."""
