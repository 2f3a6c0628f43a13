"""Evaluation of trained world models (``train/evaluate.py`` is the entry point; training-time validation
and precompute's Recon report score with the same code):

    windows.py     real evaluation windows read from a split's clip shards, with their ground truth
    rollout.py     the rollout protocol: frames -> FSQ features -> n-step rollouts -> decoded frames
    scoring.py     one way to score decoded frames: PSNR, SSIM, LPIPS, ST-LPIPS, FVD per row
    slots.py       what slot models' slots hold: DCI (dci.py) and slot-agent assignments (assignment.py)
    figures.py     Fig. 5 (latent actions in 2D), Fig. 6 (controllable generation), Figs. 7-9 (assignments)
    report.py      scores.json, table1.md, table2_dci.md
"""
