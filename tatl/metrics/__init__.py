"""Official ISIC scoring: ISIC 2018 Task 1-2 (Jaccard, Dice, in memory and over folders) and ISIC 2017 Part 2."""
