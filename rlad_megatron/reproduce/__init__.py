"""The reproduction: the paper's tables in miniature (`rlad reproduce`, `rlad demo`).

  recipe.py   a recipe file: the cached preparation stages (tokenizer, teacher SFT, student
              SFT; `rlad prepare`) and the RL stage the arms start from
  spec.py     the recipe's `reproduce` section -> one RunConfig per (arm, seed)
  runner.py   prepare the teacher and student once, run the jobs side by side, resume
  stats.py    means, Student-t CIs, paired differences, the evaluation's standard error
  results.py  Tables 1, 4 and 5 (results.md, results.json) from the runs' files
  plots.py    curves.png, alpha.png
  grid.py     `rlad map`: a grid of reproductions, student strength x training setting

This folder sits above train/: it launches `rlad train` processes and reads their files; it
imports train/ for the config schema and, in recipe.py's preparation stages, the training loop
itself (`rlad prepare` trains the teacher and student in-process).
"""
