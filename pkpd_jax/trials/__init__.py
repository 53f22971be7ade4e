"""In-silico clinical trials: virtual populations, steady-state response, coverage and dose search."""
