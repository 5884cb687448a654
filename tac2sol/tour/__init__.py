"""The local tour (``make run``): demo machinery above both the operator and the trainer.

It plays the operator's part on this machine (load, resolve, plan and map a TrainingRun exactly as
the operator does), builds the tiny model and the SYNTHETIC sample data, and trains in-process.
The trainer package imports nothing from here or from the operator.
"""
