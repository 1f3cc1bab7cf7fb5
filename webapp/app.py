"""LoRA Lab's Streamlit entry point: it only routes. Pages live in webapp/pages/, logic in webapp/services/."""

import streamlit as st

from webapp import widgets
from webapp.runner import jobs

st.set_page_config(page_title="LoRA Lab", page_icon="🧪", layout="wide")
widgets.account(widgets.current_user())  # signs the visitor in first where the operator asks for it
# Queued runs need a runner; starting one is a no-op when it is alive (a file lock test, microseconds).
jobs.ensure_runner()
st.navigation(
    [
        st.Page("pages/new_run.py", title="New run", icon="🚀", default=True),
        st.Page("pages/runs.py", title="Runs", icon="📈"),
        st.Page("pages/compare.py", title="Compare", icon="⚖️"),
        st.Page("pages/playground.py", title="Playground", icon="🎮"),
    ]
).run()
