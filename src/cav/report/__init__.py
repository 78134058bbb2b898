"""Results of TCAV runs: tables, statistics summary, JSON/CSV files and figures."""
