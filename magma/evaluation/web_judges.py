"""Model judges for the grades VWA leaves to models, asked through an OpenAI-compatible chat endpoint:
``fuzzy_match`` answers (VWA asks GPT-4) and ``eval_vqa`` questions about page images (VWA asks BLIP-2).
Without a judge those grades stay "needs judge" rather than failing."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from magma.policies.openai_chat import ChatClient, image_data_url

FUZZY_SYSTEM = (
    "You grade answers. Given a task, a reference answer and a predicted answer, say whether the prediction "
    "means the same as the reference for this task (extra detail that does not contradict it is fine). "
    "Reply with one word: correct or incorrect."
)


def chat_fuzzy_judge(client: ChatClient) -> Callable[[str, str, str], bool]:
    """``judge(prediction, reference, intent) -> bool`` for ``GradingConfig(fuzzy_judge=...)``."""

    def judge(prediction: str, reference: str, intent: str) -> bool:
        question = f"Task: {intent}\nReference answer: {reference}\nPredicted answer: {prediction}"
        reply = client.complete([{"role": "system", "content": FUZZY_SYSTEM}, {"role": "user", "content": question}])
        verdict = reply.strip().lower()
        return "incorrect" not in verdict and "correct" in verdict

    return judge


def chat_vqa_model(client: ChatClient) -> Callable[[list[Image.Image], list[str]], list[str]]:
    """``vqa(images, prompts) -> answers`` for ``GradingConfig(vqa_model=...)``, one short answer per image."""

    def answer(images: list[Image.Image], prompts: list[str]) -> list[str]:
        replies = []
        for image, prompt in zip(images, prompts, strict=True):
            question = prompt.removeprefix("Q:").removesuffix("A:").strip()
            content = [
                {"type": "text", "text": f"Answer in a few words about this image: {question}"},
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            ]
            replies.append(client.complete([{"role": "user", "content": content}]))
        return replies

    return answer
