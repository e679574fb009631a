"""What the pages share and are not pages themselves: the per-session workspace (state), the
canvas component and its adapter, charts, the live graph, the runs panel and Streamlit's own
widget words. A page imports these; no page imports another page."""
