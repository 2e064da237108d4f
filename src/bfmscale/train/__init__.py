"""Training: sequence batches, objectives and negative samplers, schedule, the train-to-budget loop."""
