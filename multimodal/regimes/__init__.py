"""Training regimes beyond one run on one dataset: federated fine-tuning on Flower (`multimodal.regimes.federated`,
``multimodal-federate``) and continual learning over a task sequence (`multimodal.regimes.continual`,
``multimodal-continual``). Both train through the `Trainer`'s optimizer, schedule, precision and accumulation."""
