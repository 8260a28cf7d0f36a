"""Account administration: create and edit users, outlets and departments.

One set of validated inputs and use cases shared by the admin pages and the CLI. The
functions take the caller's ``AsyncSession`` and never commit. Invalid input raises
:class:`FieldErrors`, whose ``details["fields"]`` maps each form field to its problem.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from cloudhall.auth import MIN_PASSWORD_LENGTH
from cloudhall.errors import Conflict, InvalidInput, NotFound
from cloudhall.identities import (
    CODE_RE,
    WEEKDAYS,
    Department,
    Outlet,
    Role,
    User,
    get_user,
    validate_working_hours,
)

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
MAX_PASSWORD_LENGTH = 256
M = TypeVar("M", bound=BaseModel)


class FieldErrors(InvalidInput):
    """Input rejected; ``details["fields"]`` is ``{field: message}`` for the form to show."""

    def __init__(self, fields: dict[str, str]) -> None:
        summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
        super().__init__(f"输入有误（{summary}）", details={"fields": dict(fields)})
        self.fields = dict(fields)


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


def _code(value: str) -> str:
    if not CODE_RE.match(value):
        raise ValueError("编码为 1-32 位字母、数字或 _ . -")
    return value


class UserInput(_Input):
    """Everything about a user an admin may set (the username only on creation)."""

    username: str
    display_name: str = Field(min_length=1, max_length=64)
    role: Role
    outlet: str = ""  # outlet code, for outlet_staff
    county: str = Field(default="", max_length=64)
    departments: list[str] = Field(default_factory=list)  # department codes, for agents
    enabled: bool = True

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not USERNAME_RE.match(value):
            raise ValueError("用户名为 2-64 位字母、数字或 _ . -")
        return value

    @field_validator("departments", mode="before")
    @classmethod
    def _dedupe(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return list(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
        return value


class OutletInput(_Input):
    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    island: str = Field(min_length=1, max_length=64)
    town: str = Field(min_length=1, max_length=64)
    county: str = Field(min_length=1, max_length=64)
    contact_name: str = Field(default="", max_length=64)
    contact_phone: str = Field(default="", max_length=32, pattern=r"^[0-9+\- ]*$")
    enabled: bool = True

    @field_validator("code")
    @classmethod
    def _check_code(cls, value: str) -> str:
        return _code(value)


class DepartmentInput(_Input):
    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    county: str = Field(min_length=1, max_length=64)
    working_hours: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("code")
    @classmethod
    def _check_code(cls, value: str) -> str:
        return _code(value)

    @field_validator("working_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_hours_text(value)
        try:
            return validate_working_hours(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None


def parse_input(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` into ``model``; raise :class:`FieldErrors` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for problem in exc.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "form"
            fields.setdefault(name, _message(problem))
        raise FieldErrors(fields) from None


def _message(problem: Any) -> str:
    """A pydantic problem in the words of the (Chinese) admin form."""
    kind, ctx = problem["type"], problem.get("ctx") or {}
    if kind == "value_error":
        return str(problem["msg"]).removeprefix("Value error, ")
    if kind == "string_too_short":
        return "不能为空" if ctx.get("min_length") == 1 else f"至少 {ctx.get('min_length')} 个字符"
    if kind == "string_too_long":
        return f"最多 {ctx.get('max_length')} 个字符"
    if kind in ("enum", "literal_error"):
        return f"请从 {ctx.get('expected', '给定选项')} 中选择"
    if kind == "string_pattern_mismatch":
        return "格式不正确"
    if kind == "missing":
        return "必填"
    return str(problem["msg"])


def check_password(password: str) -> str:
    """Return ``password`` if acceptable; raise :class:`FieldErrors` on field ``password``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise FieldErrors({"password": f"密码至少 {MIN_PASSWORD_LENGTH} 个字符"})
    if len(password) > MAX_PASSWORD_LENGTH:
        raise FieldErrors({"password": f"密码最多 {MAX_PASSWORD_LENGTH} 个字符"})
    return password


# Working hours as text, one rule per line or ';': "mon-fri 08:30-12:00 14:00-17:30", "tz Asia/Shanghai".
def parse_hours_text(text: str) -> dict[str, Any]:
    """Parse the text form of working hours; raise ``ValueError`` naming the bad part."""
    hours: dict[str, Any] = {}
    for line in re.split(r"[;\n]", text):
        words = line.split()
        if not words:
            continue
        head, ranges = words[0].lower(), words[1:]
        if head == "tz":
            if len(ranges) != 1:
                raise ValueError(f"{line.strip()!r}：时区请写作 tz Asia/Shanghai")
            hours["tz"] = ranges[0]
            continue
        days = _day_span(head)
        pairs = []
        for part in ranges:
            match = re.fullmatch(r"(\d\d:\d\d)-(\d\d:\d\d)", part)
            if not match:
                raise ValueError(f"{part!r} 不是 08:30-12:00 这样的时段")
            pairs.append([match.group(1), match.group(2)])
        for day in days:
            hours[day] = pairs
    try:
        return validate_working_hours(hours)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


def _day_span(word: str) -> list[str]:
    start, _, end = word.partition("-")
    if start not in WEEKDAYS or (end and end not in WEEKDAYS):
        raise ValueError(f"{word!r} 不是星期或 mon-fri 这样的范围（可用：{', '.join(WEEKDAYS)}）")
    first, last = WEEKDAYS.index(start), WEEKDAYS.index(end or start)
    if last < first:
        raise ValueError(f"{word!r} 的起止顺序颠倒")
    return list(WEEKDAYS[first : last + 1])


def format_hours_text(hours: dict[str, Any]) -> str:
    """The text form of working hours (inverse of :func:`parse_hours_text`), days grouped."""
    lines: list[str] = []
    if hours.get("tz"):
        lines.append(f"tz {hours['tz']}")
    index = 0
    while index < len(WEEKDAYS):
        day = WEEKDAYS[index]
        if day not in hours:
            index += 1
            continue
        end = index
        while end + 1 < len(WEEKDAYS) and hours.get(WEEKDAYS[end + 1]) == hours[day]:
            end += 1
        span = day if end == index else f"{day}-{WEEKDAYS[end]}"
        ranges = " ".join(f"{a}-{b}" for a, b in hours[day])
        lines.append(f"{span} {ranges}".rstrip())
        index = end + 1
    return "\n".join(lines)


async def _flush_unique(session: AsyncSession, field: str, message: str) -> None:
    """Flush; a unique-constraint race (two admins saving the same code) becomes a field error."""
    try:
        await session.flush()
    except IntegrityError:
        raise FieldErrors({field: message}) from None


async def known_counties(session: AsyncSession) -> list[str]:
    counties = set(await session.scalars(select(Department.county).distinct()))
    counties |= set(await session.scalars(select(Outlet.county).distinct()))
    return sorted(counties)


async def _scope(
    session: AsyncSession, data: UserInput
) -> tuple[Outlet | None, str | None, list[Department]]:
    """Resolve the outlet, county and departments a role needs; raise :class:`FieldErrors`."""
    if data.role is Role.OUTLET_STAFF:
        if not data.outlet:
            raise FieldErrors({"outlet": "便民服务站工作人员必须属于一个服务站"})
        if data.departments:
            raise FieldErrors({"departments": "只有坐席才属于窗口"})
        outlet = await session.scalar(select(Outlet).where(Outlet.code == data.outlet))
        if outlet is None:
            raise FieldErrors({"outlet": f"没有编码为 {data.outlet!r} 的便民服务站"})
        return outlet, outlet.county, []
    if data.outlet:
        raise FieldErrors({"outlet": "只有便民服务站工作人员才属于服务站"})
    if data.role is Role.AGENT:
        if not data.departments:
            raise FieldErrors({"departments": "坐席至少要属于一个窗口"})
        found = list(await session.scalars(select(Department).where(Department.code.in_(data.departments))))
        missing = sorted(set(data.departments) - {d.code for d in found})
        if missing:
            raise FieldErrors({"departments": f"没有编码为 {', '.join(missing)} 的窗口"})
        counties = {d.county for d in found}
        if len(counties) > 1:
            raise FieldErrors({"departments": f"所选窗口分属多个区县（{', '.join(sorted(counties))}）"})
        county = counties.pop()
        if data.county and data.county != county:
            raise FieldErrors({"county": f"所选窗口属于 {county}，不是 {data.county}"})
        return None, county, sorted(found, key=lambda d: d.code)
    if data.departments:
        raise FieldErrors({"departments": "只有坐席才属于窗口"})
    if data.role is Role.SUPERVISOR:
        if not data.county:
            return None, None, []  # the whole city
        if data.county not in await known_counties(session):
            raise FieldErrors({"county": f"{data.county!r} 没有任何服务站或窗口"})
        return None, data.county, []
    if data.county:
        raise FieldErrors({"county": "系统管理员不属于区县"})
    return None, None, []


async def create_user(session: AsyncSession, data: UserInput, password_hash: str) -> User:
    """Add a user; raise :class:`FieldErrors` for bad input and :class:`Conflict` for a taken username."""
    taken = await session.scalar(select(func.count()).select_from(User).where(User.username == data.username))
    if taken:
        raise FieldErrors({"username": f"用户名 {data.username!r} 已被使用"})
    outlet, county, departments = await _scope(session, data)
    user = User(
        username=data.username,
        display_name=data.display_name,
        password_hash=password_hash,
        role=data.role.value,
        outlet_id=outlet.id if outlet else None,
        county=county,
        enabled=data.enabled,
        departments=departments,
    )
    session.add(user)
    await _flush_unique(session, "username", f"用户名 {data.username!r} 已被使用")
    return user


async def update_user(
    session: AsyncSession, user_id: int, data: UserInput, *, actor_id: int | None = None
) -> User:
    """Change a user's name, role, scope and enabled flag (not the username).

    Raises :class:`NotFound`, :class:`FieldErrors`, and :class:`Conflict` when an admin would
    lock themselves out (disable or demote their own account).
    """
    user = await get_user(session, user_id)
    if actor_id == user.id and (data.role is not Role.ADMIN or not data.enabled):
        raise Conflict("不能停用自己的账号，也不能取消自己的管理员角色")
    outlet, county, departments = await _scope(session, data)
    user.display_name = data.display_name
    user.role = data.role.value
    user.outlet_id = outlet.id if outlet else None
    user.outlet = outlet
    user.county = county
    user.departments = departments
    user.enabled = data.enabled
    await session.flush()
    return user


async def find_user(session: AsyncSession, username: str) -> User:
    user = await session.scalar(
        select(User)
        .where(User.username == username)
        .options(selectinload(User.departments), selectinload(User.outlet))
    )
    if user is None:
        raise NotFound(f"no user is called {username!r}")
    return user


async def set_password(session: AsyncSession, user_id: int, password_hash: str) -> User:
    user = await get_user(session, user_id)
    user.password_hash = password_hash
    await session.flush()
    return user


async def set_enabled(
    session: AsyncSession, user_id: int, enabled: bool, *, actor_id: int | None = None
) -> User:
    user = await get_user(session, user_id)
    if actor_id == user.id and not enabled:
        raise Conflict("不能停用自己的账号")
    user.enabled = enabled
    await session.flush()
    return user


async def get_outlet(session: AsyncSession, outlet_id: int) -> Outlet:
    outlet = await session.get(Outlet, outlet_id)
    if outlet is None:
        raise NotFound(f"outlet {outlet_id} does not exist")
    return outlet


async def get_department(session: AsyncSession, department_id: int) -> Department:
    department = await session.get(Department, department_id)
    if department is None:
        raise NotFound(f"department {department_id} does not exist")
    return department


async def _code_taken(
    session: AsyncSession, model: type[Outlet] | type[Department], code: str, own_id: int | None
) -> bool:
    query = select(model.id).where(model.code == code)
    found = await session.scalar(query)
    return found is not None and found != own_id


async def save_outlet(session: AsyncSession, data: OutletInput, outlet_id: int | None = None) -> Outlet:
    """Create (``outlet_id`` None) or update an outlet; raise :class:`FieldErrors` or :class:`NotFound`."""
    if await _code_taken(session, Outlet, data.code, outlet_id):
        raise FieldErrors({"code": f"编码 {data.code!r} 已被其他服务站使用"})
    outlet = Outlet() if outlet_id is None else await get_outlet(session, outlet_id)
    for key, value in data.model_dump().items():
        setattr(outlet, key, value)
    if outlet_id is None:
        session.add(outlet)
    else:
        # Staff of a moved outlet follow it to its county.
        for user in await session.scalars(select(User).where(User.outlet_id == outlet.id)):
            user.county = outlet.county
    await _flush_unique(session, "code", f"编码 {data.code!r} 已被其他服务站使用")
    return outlet


async def save_department(
    session: AsyncSession, data: DepartmentInput, department_id: int | None = None
) -> Department:
    """Create (``department_id`` None) or update a department; raise :class:`FieldErrors` or :class:`NotFound`."""
    if await _code_taken(session, Department, data.code, department_id):
        raise FieldErrors({"code": f"编码 {data.code!r} 已被其他窗口使用"})
    department = Department() if department_id is None else await get_department(session, department_id)
    if department_id is not None and department.county != data.county:
        has_agents = await session.scalar(
            select(func.count())
            .select_from(User)
            .join(User.departments)
            .where(Department.id == department.id)
        )
        if has_agents:
            raise FieldErrors({"county": "该窗口还有坐席，请先调整坐席再修改区县"})
    for key, value in data.model_dump().items():
        setattr(department, key, value)
    if department_id is None:
        session.add(department)
    await _flush_unique(session, "code", f"编码 {data.code!r} 已被其他窗口使用")
    return department
