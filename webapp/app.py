"""LoRA Lab web app entry point (the full app arrives with the web-app issue)."""

import streamlit as st

st.set_page_config(page_title="LoRA Lab", page_icon="🧪")
st.title("LoRA Lab")
st.write("The web app is under construction. Fine-tune headless meanwhile:")
st.code("accelerate launch finetune/train.py --config configs/bert.yaml --train_file reviews.csv", language="bash")
