"""`make nemesis`: seeded schedules of faults against the whole pipeline, and a checker."""
