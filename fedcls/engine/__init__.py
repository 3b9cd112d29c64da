"""Running a federation: the Flower simulation on Ray, the cohort grid, one run end to end."""
