"""`mt view`: a local, read-only web viewer of a study's catalog (grid of marker rates, completions with the marker
highlighted, judge scores and replies, two cells side by side). ``db`` opens the catalogs and runs the queries of
``sql/view/``, ``app`` serves the pages, ``format`` renders numbers and completions."""
