"""The KServe v2 / Open Inference Protocol data plane, free of any transport.

As in KServe's own Python server, the gRPC servicer (`kserve`) and the REST routes
(`kserve_rest`) are thin adapters over this one object: both hand it a `ModelInferRequest`
(REST bodies are converted to one by `kserve_rest_codec`) and get `ModelInferResponse`s back,
so tensors, parameters and errors mean the same on either side. Statistics of every infer
call are kept here for ModelStatistics and `/stats`.
"""

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from helix_proto import grpc_service_pb2 as kserve
from helix_worker.errors import ServingError
from helix_worker.frontend import kserve_codec as codec
from helix_worker.frontend.kserve_stats import InferenceStatistics
from helix_worker.frontend.service import GenerationService

SERVER_NAME = "helix"
SERVER_VERSION = "0.1.0"
MODEL_VERSION = "1"
EXTENSIONS = ("model_configuration", "statistics", "generate")


class ModelNotFound(ServingError):
    """A request named a model this server does not serve (gRPC NOT_FOUND, HTTP 404)."""


class KServeDataPlane:
    def __init__(self, service: GenerationService) -> None:
        self.service = service
        self.statistics = InferenceStatistics()

    @property
    def model_name(self) -> str:
        return self.service.model_name

    def ready(self) -> bool:
        return self.service.coordinator.ready

    def model_ready(self, name: str) -> bool:
        return name == self.model_name and self.ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def check_model(self, name: str, version: str = "") -> None:
        if name != self.model_name or version not in ("", MODEL_VERSION):
            shown = f"{name!r}" + (f" version {version!r}" if version else "")
            raise ModelNotFound(f"unknown model {shown}; this server serves {self.model_name!r} "
                                f"version {MODEL_VERSION}")

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return {"name": self.model_name, "versions": [MODEL_VERSION], "platform": "helix",
                "inputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in codec.INPUTS.items()],
                "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in codec.OUTPUTS.items()]}

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        self.check_model(name, version)
        return codec.model_config(self.model_name)

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Statistics of the named model, or of every model when `name` is empty."""
        if name:
            self.check_model(name, version)
        return {"model_stats": [self.statistics.as_json(self.model_name, MODEL_VERSION)]}

    async def infer(self, request: kserve.ModelInferRequest) -> kserve.ModelInferResponse:
        """The whole answer to every prompt of the request (several prompts run at once)."""
        self.check_model(request.model_name, request.model_version)
        started, prompts = time.perf_counter_ns(), 1
        try:
            parsed = codec.text_requests(request, streaming=False)
            prompts = len(parsed.prompts)
            names = codec.requested_outputs(request)
            tasks = [asyncio.ensure_future(self.service.complete(p)) for p in parsed.prompts]
            try:
                done = await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()  # one prompt failed: the others stop and free their KV
            answers = [codec.Answer(_echoed(p.prompt, c.text, parsed.echo), c.token_ids, c.finish_reason, c.logprobs)
                       for p, c in zip(parsed.prompts, done)]
        except BaseException:
            self.statistics.record(prompts, time.perf_counter_ns() - started, ok=False)
            raise
        self.statistics.record(prompts, time.perf_counter_ns() - started, ok=True)
        return codec.response(request, self.model_name, names, answers)

    async def stream(self, request: kserve.ModelInferRequest) -> AsyncGenerator[kserve.ModelInferResponse, None]:
        """Responses to one streamed request: one per token (`stream` true, the default on a
        stream) or one with the whole answer; the last carries triton_final_response."""
        self.check_model(request.model_name, request.model_version)
        parsed = codec.text_requests(request, streaming=True)
        names = codec.requested_outputs(request)
        if not parsed.stream:
            whole = await self.infer(request)
            whole.parameters["triton_final_response"].bool_param = not parsed.empty_final
            yield whole
        else:
            started, ok = time.perf_counter_ns(), False
            try:
                async with aclosing(self._pieces(request, parsed, names)) as responses:
                    async for response in responses:
                        yield response
                ok = True
            finally:
                self.statistics.record(1, time.perf_counter_ns() - started, ok=ok)
        if parsed.empty_final:
            final = kserve.ModelInferResponse(model_name=self.model_name, model_version=MODEL_VERSION, id=request.id)
            final.parameters["triton_final_response"].bool_param = True
            yield final

    async def _pieces(self, request: kserve.ModelInferRequest, parsed: codec.KServeRequest,
                      names: list[str]) -> AsyncGenerator[kserve.ModelInferResponse, None]:
        text = parsed.prompts[0]
        generation = await self.service.prepare(text)
        echo = parsed.echo
        async with aclosing(self.service.stream(text, generation)) as pieces:
            async for piece in pieces:
                last = piece.finish_reason is not None
                answer = codec.Answer(_echoed(text.prompt, piece.text, echo), piece.token_ids, piece.finish_reason,
                                      piece.logprobs)
                echo = False  # the prompt leads the first piece only
                yield codec.response(request, self.model_name, names, [answer], final=last and not parsed.empty_final)


def _echoed(prompt: str | None, text: str, echo: bool) -> str:
    """exclude_input_in_output false: the text prompt, then the generated text, as Triton's LLM backends answer."""
    return (prompt or "") + text if echo else text
