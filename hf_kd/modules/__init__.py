"""The extra ``nn.Module``s distillation methods train (fusion/self-distillation modules, projector ensembles,
adapters, self-teachers, auxiliary heads). They live in a ``DistillationModel``, never in an exported student."""
