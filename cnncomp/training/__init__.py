"""Training one run: the step and evaluation (engine), the loop over a method's stages, checkpoints,
data-parallel processes, loggers and the typed run record."""
