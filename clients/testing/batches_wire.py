"""The Anthropic Message Batches routes of the fake provider server.

  POST /v1/messages/batches                  create (custom_id checked; may be dropped after it is made)
  GET  /v1/messages/batches[/{id}]           list, poll (a batch ends after `batch_polls` polls)
  GET  /v1/messages/batches/{id}/results     JSONL results, shuffled, with scripted item faults
  POST /v1/messages/batches/{id}/cancel
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

from aiohttp import web

from clients.testing.anthropic_wire import AnthropicMessages, rejection
from clients.testing.faults import BATCH_FAULTS, CONTENT_FAULTS

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class AnthropicBatches(AnthropicMessages):
    """Message Batches on top of Anthropic Messages (each item's reply is a Messages reply)."""

    def _batch_object(self, batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _batch_create(self, request: web.Request) -> web.Response:
        body, _ = await self._read(request)
        denied = self._anthropic_auth(request)
        if denied is not None:
            return denied
        items = body.get("requests") or []
        ids = [r.get("custom_id", "") for r in items]
        bad = [i for i in ids if not CUSTOM_ID.match(i)]
        if not items or bad:
            message = f"custom_id must match {CUSTOM_ID.pattern}: {bad[:3]}" if bad else "no requests"
            return self._anthropic_error(400, "invalid_request_error", message)
        if len(set(ids)) != len(ids):
            return self._anthropic_error(400, "invalid_request_error", "custom_id values must be unique within a batch")
        fault = self._pick_fault(json.dumps(body), {"status", "drop", "disconnect"})
        if fault is not None and fault.kind == "status":
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
            message = fault.message or f"scripted {fault.status}"
            return self._anthropic_error(fault.status, "api_error", message, headers)
        if fault is not None and fault.kind == "disconnect":  # lost before the batch was made
            request.transport.close()
            return web.Response(status=500)
        now = datetime.now(timezone.utc)
        batch = {"id": self._next_id("msgbatch"), "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(items), "succeeded": 0, "errored": 0, "canceled": 0,
                                    "expired": 0},
                 "created_at": now.isoformat(), "expires_at": (now + timedelta(hours=24)).isoformat(),
                 "ended_at": None, "cancel_initiated_at": None, "archived_at": None, "results_url": None,
                 "_items": items, "_polls": self.batch_polls, "_results": None}
        self.batches[batch["id"]] = batch
        if fault is not None and fault.kind == "drop":  # made, but the reply is lost: the ambiguous case
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(self._batch_object(batch))

    def _finish_batch(self, batch: dict, canceled: bool = False) -> None:
        results, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in batch["_items"]:
            text = json.dumps(item)
            fault = self._pick_fault(text, BATCH_FAULTS | CONTENT_FAULTS)
            kind = fault.kind if fault else ""
            if kind == "batch_missing":
                continue
            if canceled or kind == "batch_canceled":
                result: dict = {"type": "canceled"}
            elif kind == "batch_expired":
                result = {"type": "expired"}
            elif kind == "batch_errored" or self._rejected_field(item["params"]) or self._schema_refusal(item["params"]):
                field = self._rejected_field(item["params"])
                message = ("scripted batch item error" if kind == "batch_errored"
                           else rejection(field) if field else self._schema_refusal(item["params"]))
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": message}}}
            else:
                result = {"type": "succeeded", "message": self._anthropic_message(item["params"], fault, batch=True)}
            counts[result["type"]] += 1
            results.append({"custom_id": item["custom_id"], "result": result})
        self.rng.shuffle(results)  # the API returns results in any order
        batch.update(processing_status="ended", request_counts=counts, _results=results,
                     ended_at=datetime.now(timezone.utc).isoformat(),
                     results_url=f"{self.base_url}/v1/messages/batches/{batch['id']}/results")

    async def _batch_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            batch["_polls"] -= 1
            if batch["_polls"] <= 0:
                self._finish_batch(batch)
        return web.json_response(self._batch_object(batch))

    async def _batch_list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", 20))
        data = [self._batch_object(b) for b in reversed(list(self.batches.values()))][:limit]
        return web.json_response({"data": data, "has_more": len(self.batches) > limit,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _batch_results(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            return self._anthropic_error(400, "invalid_request_error", "batch has not ended yet")
        lines = "".join(json.dumps(r) + "\n" for r in batch["_results"])
        return web.Response(text=lines, content_type="application/x-jsonl")

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return self._anthropic_error(404, "not_found_error", "no such batch")
        if batch["processing_status"] != "ended":
            batch["cancel_initiated_at"] = datetime.now(timezone.utc).isoformat()
            self._finish_batch(batch, canceled=True)
        return web.json_response(self._batch_object(batch))
