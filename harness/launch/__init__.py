"""Running points: submitit executors, job arrays, the point job, run folders, states."""
