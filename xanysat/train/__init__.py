"""Self-supervised training (JEPA) of the encoder: masks, losses, predictor, teacher and schedules,
and the loop. Pure torch; runs the encoder's own modules.
"""
