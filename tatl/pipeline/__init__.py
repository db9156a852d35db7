"""The TATL pipeline: a run folder set up and checked, stages 1-3 trained in order, every variant scored."""
