"""The benchmark harness: suites of algorithms x seeds x tasks, trained and compared on one policy, data and budget.

- :mod:`.suite`: suite files, their checks and their cells (task x algorithm x seed)
- :mod:`.custom_task`: user tasks declared in suite files
- :mod:`.paths`: plain names for folders, removals only inside the bench's folders, the results folder's lock
- :mod:`.pairs`: preference pairs from the starting model's samples, labelled by the gold rule
- :mod:`.results`: the results CSV: the column schema runner and report share, reading and appending rows
- :mod:`.runner`: runs a suite, preparing each task once, then training and evaluating every missing cell
- :mod:`.document`: a report's blocks, written out as Markdown and as one HTML page
- :mod:`.report`: renders results.csv into report.md, report.html and plots
"""
