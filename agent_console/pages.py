"""The agent console page (``/console``): presence, the live queue, callbacks and the call view.

Everything live arrives over Socket.IO (see docs/protocol.md); the page only carries its
configuration (the departments whose queues the agent serves) as JSON, through the
``page_config`` template global that the web shell installs.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import select

from cloudhall import appkeys
from cloudhall.http import principal, requires
from cloudhall.catalog import ServiceItem
from cloudhall.identities import Department, Outlet, Role


@requires(Role.AGENT)
async def console_page(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[appkeys.DATABASE].transaction() as session:
        rows = await session.scalars(
            select(Department).where(Department.id.in_(who.department_ids)).order_by(Department.code)
        )
        departments = [{"id": d.id, "code": d.code, "name": d.name} for d in rows]
        # Callback rows name their outlet and item by id only: the page labels them.
        outlets = {
            str(o.id): {"name": o.name, "island": o.island}
            for o in await session.scalars(select(Outlet).where(Outlet.county == who.county))
        }
        items = {
            str(i.id): i.name
            for i in await session.scalars(select(ServiceItem).where(ServiceItem.department_id.in_(who.department_ids)))
        }
    return aiohttp_jinja2.render_template(
        "console.html",
        request,
        {"departments": departments, "county": who.county, "outlets": outlets, "items": items},
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/console", console_page)
