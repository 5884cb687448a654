"""The TrainingRun API, model catalog, memory planner, manifest rendering and the kopf operator."""
