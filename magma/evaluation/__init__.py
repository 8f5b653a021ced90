"""Running policies over environments' task suites: episodes, success tables, trajectory videos."""
