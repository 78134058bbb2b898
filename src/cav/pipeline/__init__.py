"""The TCAV pipeline: image sets, CAV fitting and scoring, caching (``run_tcav``)."""
