"""AI feedback (§3.3): judge templates (EN/ZH), answer reading with log-prob confidence, both-order
position-bias handling, the async labeling client, and the consolidation policy of `batray prefs`."""
