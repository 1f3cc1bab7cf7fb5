"""Playground: try a finished run. GPT-2: base vs fine-tuned text; BERT: text to label; ViT/ResNet: image to label."""

import pandas as pd
import streamlit as st
from PIL import Image, UnidentifiedImageError

from finetune.errors import UserError
from finetune.rundir import FINISHED
from finetune.task_kinds import task_kind
from webapp import notices, widgets
from webapp.services import playground, runs

st.title("Playground")
finished = [s for s in runs.list_runs(widgets.current_user()) if s.state == FINISHED]
if not finished:
    st.info("No finished run yet: the playground loads a run's trained adapter once it has finished.")
    st.page_link("pages/runs.py", label="See the runs", icon="📈")
    st.stop()
names = {s.ref: s for s in finished}
name = st.selectbox(
    "Run", list(names), format_func=lambda n: f"{n} · {names[n].task} · {names[n].model_label}", key="play_run"
)


@st.cache_resource(max_entries=4, show_spinner="Loading the base model and the adapter…")
def load(path: str, saved_at: float) -> playground.TrainedModel:
    # Shared between sessions: inference only, and generation takes the model's own lock.
    return playground.load(path)


try:
    summary = names[name]
    trained = load(str(summary.path), (summary.path / "adapter").stat().st_mtime)  # a re-run reloads
except UserError as err:
    notices.error(str(err))
    st.stop()
except OSError as err:  # the adapter deleted meanwhile, or a base model neither cached nor reachable
    notices.error(
        f"run: cannot load {name} ({type(err).__name__}: {err}); its adapter and its base model "
        f"{summary.model_label} must both be available"
    )
    st.stop()


def show_scores(scores: list[tuple[str, float]]) -> None:
    label, probability = scores[0]
    st.metric("Prediction", label, f"{probability:.1%} confidence", delta_color="off")
    st.bar_chart(pd.DataFrame(scores, columns=["label", "probability"]).set_index("label"), horizontal=True)


shown_as = task_kind(trained.task).playground
if shown_as == "generate":
    prompt = st.text_area("Prompt", "the movie was", key="prompt")
    cells = st.columns(3)
    max_new_tokens = cells[0].slider("New tokens", 5, 200, 40)
    temperature = cells[1].slider("Temperature (0: greedy)", 0.0, 2.0, 0.8, 0.1)
    seed = cells[2].number_input("Seed", value=0, step=1)
    if st.button("Generate", type="primary"):
        with st.spinner("Generating…"):
            texts = playground.generate(trained, prompt, max_new_tokens, temperature, int(seed))
        left, right = st.columns(2)
        left.markdown("**Base model**")
        left.write(prompt + texts["base"])
        right.markdown("**Fine-tuned**")
        right.write(prompt + texts["finetuned"])
elif shown_as == "classify-text":
    text = st.text_area("Text", "the acting was wonderful", key="text")
    if st.button("Classify", type="primary") and text.strip():
        show_scores(playground.classify_text(trained, text))
else:  # "classify-image"
    upload = st.file_uploader("Image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="image")
    if upload is not None:
        try:
            image = Image.open(upload)
            image.load()
        except (UnidentifiedImageError, OSError) as err:
            notices.error(
                f"image: {upload.name} cannot be read as an image ({type(err).__name__}); "
                "expected a .png, .jpg, .bmp, .gif or .webp file"
            )
            st.stop()
        left, right = st.columns([1, 2])
        left.image(image, caption=upload.name, width=200)
        with right:
            show_scores(playground.classify_image(trained, image))
