"""The forward models y = A x + e (paper Sec. 3.1): the operator base, the paper's operators, separable matrices, the task names.

Torch-free to import: the command line lists the tasks from `physics.tasks` without loading torch.
"""
