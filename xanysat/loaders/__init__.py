"""Torch samplers and datasets over prepared cubes, for training from datacubes.
"""
