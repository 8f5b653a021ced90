"""``agent serve``: a policy server (openpi's websocket + msgpack protocol for robots, OpenAI chat-completions
for agents)."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    policy: Annotated[
        str, typer.Option("--policy", help="magma | lapa | scripted, or a factory as package.module:function.")
    ] = "scripted",
    model: Annotated[str | None, typer.Option("--model", help="Checkpoint directory (magma, lapa).")] = None,
    host: Annotated[str, typer.Option("--host", help="Bind address; anything but loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8700,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="AGENT_POLICY_TOKEN",
            help="Token clients must send (Authorization: Bearer TOKEN, or openpi's api_key).",
        ),
    ] = None,
    cameras: Annotated[str, typer.Option("--cameras", help="Observation image keys, comma-separated.")] = "image",
    image_size: Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")] = 128,
    state_dim: Annotated[
        int | None,
        typer.Option(
            "--state-dim",
            help="Robot state size the policy takes (0: none; default: a checkpoint's own, else 13). A checkpoint "
            "trained with a state refuses another size.",
        ),
    ] = None,
    control_hz: Annotated[float, typer.Option("--control-hz", help="Control rate the policy was trained at.")] = 10.0,
    statistics_key: Annotated[
        str | None, typer.Option("--statistics-key", help="Which dataset's action statistics to decode with.")
    ] = None,
    max_message_mb: Annotated[float, typer.Option("--max-message-mb", help="Largest request accepted.")] = 16.0,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="Batch requests of clients.")] = True,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most requests in one batch.")] = 8,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a batch waits for more.")] = 5.0,
    inline_max_ms: Annotated[
        float,
        typer.Option(
            "--inline-max-ms",
            help="A policy whose recent inferences took less than this (ms) answers on the server's event loop, "
            "skipping the hop to the inference thread (0: always use the thread).",
        ),
    ] = 1.0,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-origin",
            help="A web page origin (scheme://host[:port]) that may call the server from a browser; repeatable. "
            "Requests from any other page are refused.",
        ),
    ] = None,
    max_prompt_chars: Annotated[
        int, typer.Option("--max-prompt-chars", help="Most characters of text in one request.")
    ] = 16_000,
    max_prompt_tokens: Annotated[
        int, typer.Option("--max-prompt-tokens", help="Most tokens in one prompt, images included.")
    ] = 8192,
    max_image_pixels: Annotated[
        int, typer.Option("--max-image-pixels", help="Most pixels (height x width) of one image.")
    ] = 4096 * 4096,
    max_queued_per_client: Annotated[
        int, typer.Option("--max-queued-per-client", help="Most requests one client may have waiting.")
    ] = 64,
    max_chat_items: Annotated[
        int,
        typer.Option("--max-chat-items", help="Most messages plus content parts in one chat request."),
    ] = 512,
    max_choices: Annotated[
        int,
        typer.Option("--max-choices", help="Most choices (OpenAI's n) one chat request may ask for."),
    ] = 8,
    chunk_length: Annotated[
        int | None,
        typer.Option(
            "--chunk-length",
            help="Actions per answer, for policies that can plan ahead (scripted: 1 to 256; default 1). A "
            "checkpoint answers the chunks its action head was trained for (action.chunk_length) and refuses "
            "another length.",
        ),
    ] = None,
) -> None:
    """Load a policy once and serve it until SIGINT/SIGTERM: ws://HOST:PORT/ in openpi's websocket protocol
    (openpi's WebsocketClientPolicy, our PolicyClient and the robot daemon), GET /healthz, and the OpenAI
    API for agents (magma and lapa): POST /v1/chat/completions (streamed or not) and GET /v1/models. A
    checkpoint without dataset_statistics.json (a UI/web fine-tune) serves chat only."""
    from robot.policy_protocol import PolicySpec
    from robot.policy_server import PolicyServer, ServerConfig, check_range
    from robot.served_policy import load_served_policy

    config = ServerConfig(
        host=host,
        port=port,
        token=token,
        max_message_mb=max_message_mb,
        batching=batching,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        inline_max_ms=inline_max_ms,
        allowed_origins=list(allowed_origin or []),
        max_prompt_chars=max_prompt_chars,
        max_prompt_tokens=max_prompt_tokens,
        max_image_pixels=max_image_pixels,
        max_queued_per_client=max_queued_per_client,
        max_chat_items=max_chat_items,
        max_choices=max_choices,
    )
    config.check()  # before a model is loaded
    check_range("image_size", image_size, 1, 65535, "pixels per side", integer=True)
    if state_dim is not None:
        check_range("state_dim", state_dim, 0, 1_000_000, "an integer", integer=True)
    check_range("control_hz", control_hz, 0.001, 100_000.0, "hertz")
    if chunk_length is not None:
        check_range("chunk_length", chunk_length, 1, 256, "actions per answer", integer=True)
    keys = [key.strip() for key in cameras.split(",") if key.strip()]
    spec = PolicySpec(
        policy=policy,
        model_id="",
        control_hz=control_hz,
        cameras={key: [image_size, image_size, 3] for key in keys},
    )
    served = load_served_policy(policy, model, spec, statistics_key, chunk_length, state_dim)
    spec = served.spec
    server = PolicyServer(served, config)
    routes = "GET /healthz" + (", POST /v1/chat/completions, GET /v1/models" if served.chat is not None else "")
    chat_only = "" if served.serves_actions else "; chat only: the checkpoint has no robot action statistics"
    typer.echo(
        f"serving {spec.policy} ({spec.model_id}) on ws://{host}:{port} ({routes}){chat_only}; Ctrl-C stops", err=True
    )
    server.run()
