"""Helix data plane: layer-slice workers, stage-to-stage streams, and the serving front end."""
