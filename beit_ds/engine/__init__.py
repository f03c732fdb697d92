"""The DeepSpeed engine: configuration merge, checkpoints, the shared loop and the jobs.

DeepSpeed is imported only inside this package (house style rule 13).
"""
