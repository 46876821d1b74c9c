"""The files and fine-tuning-jobs endpoints of ``waluigi serve``, mounted on the app over a
:class:`~waluigi.serve.finetune_jobs.FinetuneService`."""

from __future__ import annotations

from typing import Any

from fastapi import File, Form, Request, UploadFile  # module level: route annotations resolve here
from fastapi.responses import FileResponse, JSONResponse

from waluigi.serve.finetune_api import ApiError
from waluigi.serve.finetune_jobs import FinetuneService


def add_finetune_routes(app: Any, service: FinetuneService) -> None:
    """Mount the files and fine-tuning-jobs endpoints on ``app`` (a FastAPI app)."""
    def answer(fn, *args, **kwargs):
        try:
            return JSONResponse(fn(*args, **kwargs))
        except ApiError as error:
            return JSONResponse(status_code=error.status, content=error.body())

    @app.post("/v1/files")
    def upload_file(file: UploadFile = File(...), purpose: str = Form(...)):
        return answer(service.create_file, file.filename or "upload", file.file.read(), purpose)

    @app.get("/v1/files")
    def list_files(purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc"):
        return answer(service.list_files, purpose=purpose, after=after, limit=limit, order=order)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str):
        return answer(service.get_file, file_id)

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str):
        try:
            return FileResponse(service.file_path(file_id), media_type="application/octet-stream")
        except ApiError as error:
            return JSONResponse(status_code=error.status, content=error.body())

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(status_code=400, content=ApiError(400, "the request body is not valid JSON").body())
        import asyncio

        return await asyncio.to_thread(answer, service.create_job, body)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = 20):
        return answer(service.list_jobs, after=after, limit=limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str):
        return answer(service.get_job, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(job_id: str, after: str | None = None, limit: int = 20):
        return answer(service.list_events, job_id, after=after, limit=limit)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return answer(service.cancel_job, job_id)
