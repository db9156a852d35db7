"""Reports of a run or a grid: summary.md, one self-contained HTML page and its Markdown twin."""
