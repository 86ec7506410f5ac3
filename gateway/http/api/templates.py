from fastapi import APIRouter

router = APIRouter(prefix="/templates", tags=["templates"])
