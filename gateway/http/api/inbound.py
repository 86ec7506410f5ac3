from fastapi import APIRouter

router = APIRouter(prefix="/inbound", tags=["inbound"])
