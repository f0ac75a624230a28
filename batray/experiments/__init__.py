"""Rerunnable experiments that make one of the paper's claims measurable (`batray experiment NAME`)."""
