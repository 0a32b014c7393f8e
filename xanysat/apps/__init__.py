"""Applications built on the layers below: the pretraining recipe of the shipped model, evaluation
(probes), fine-tuning and the demo.
"""
