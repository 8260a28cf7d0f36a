"""Page translations: simplified Chinese by default, English on request (gettext catalogs).

Source strings are Chinese, so zh_CN needs no catalog. The language of a request is the
``lang`` cookie when it names a supported locale (set by the switch link, ``/lang/en``),
else the best match of ``Accept-Language``, else Chinese. Templates call ``_()``; the
callables installed here read the request from the template context, so one Jinja2
environment serves every language. Strings the browser shows are sent to the page as a
translated dictionary (:func:`js_messages`) inside its JSON configuration.

Catalogs: ``web/locale/en/LC_MESSAGES/cloudhall.po`` (edit it) and the ``.mo`` compiled
from it with ``scripts/compile_translations.sh`` (committed, so a checkout needs no build).
"""

from __future__ import annotations

import gettext
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT_LOCALE = "zh_CN"
SUPPORTED = ("zh_CN", "en")
LANG_COOKIE = "lang"
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}
LOCALE_KEY = web.RequestKey("locale", str)


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark, translate later"
    """Mark a string for extraction without translating it now."""
    return message


@lru_cache(maxsize=8)
def translations(locale: str) -> gettext.NullTranslations:
    """Catalog for ``locale``; source strings are Chinese, so zh_CN needs no catalog."""
    if locale == DEFAULT_LOCALE:
        return gettext.NullTranslations()
    return gettext.translation("cloudhall", localedir=str(LOCALE_DIR), languages=[locale], fallback=True)


def normalize(tag: str) -> str | None:
    """Map a language tag (``en-GB``, ``zh-Hans-CN``, ``zh_CN``) to a supported locale, or None."""
    tag = tag.strip().replace("_", "-").lower()
    if not tag:
        return None
    primary = tag.split("-", 1)[0]
    if primary == "zh":
        return "zh_CN"
    if primary == "en":
        return "en"
    return None


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The locale for a request: the cookie if supported, else Accept-Language by q, else zh_CN."""
    if cookie in SUPPORTED:
        return cookie  # type: ignore[return-value]
    best: tuple[float, int, str] | None = None
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        locale = normalize(tag)
        if locale and quality > 0 and (best is None or (quality, -position) > (best[0], best[1])):
            best = (quality, -position, locale)
    return best[2] if best else DEFAULT_LOCALE


def request_locale(request: web.Request) -> str:
    """The locale chosen for ``request`` (computed once and kept on the request)."""
    if LOCALE_KEY not in request:
        request[LOCALE_KEY] = negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))
    return request[LOCALE_KEY]


def gettext_for(request: web.Request | None, message: str) -> str:
    """Translate ``message`` into the request's language (Chinese without a request)."""
    locale = request_locale(request) if request is not None else DEFAULT_LOCALE
    return translations(locale).gettext(message)


@jinja2.pass_context
def _gettext(context: Any, message: str) -> str:
    return gettext_for(context.get("request"), message)


@jinja2.pass_context
def _ngettext(context: Any, singular: str, plural: str, n: int) -> str:
    request = context.get("request")
    locale = request_locale(request) if request is not None else DEFAULT_LOCALE
    return translations(locale).ngettext(singular, plural, n)


async def locale_context(request: web.Request) -> dict[str, Any]:
    """Template context: the page language, for ``<html lang>`` and the switch link."""
    locale = request_locale(request)
    return {"locale": locale, "html_lang": HTML_LANG[locale], "other_locale": "en" if locale == "zh_CN" else "zh_CN"}


def install_translations(env: jinja2.Environment) -> None:
    """Install per-request gettext callables (newstyle: ``_("…%(n)s", n=1)`` escapes safely)."""
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]


# Strings the browser shows, keyed by a stable name; the page receives them translated.
JS_MESSAGES: dict[str, str] = {
    "connecting": N_("正在连接服务器…"),
    "connected": N_("已连接"),
    "disconnected": N_("与服务器的连接已断开，正在重连…"),
    "reconnecting": N_("网络中断，正在重新连接…"),
    "reconnected": N_("已恢复连接"),
    "check_camera_ok": N_("摄像头和麦克风正常"),
    "check_camera_fail": N_("无法打开摄像头或麦克风：请检查是否已连接，并在浏览器中允许使用。"),
    "check_screen_ok": N_("可以共享屏幕"),
    "check_screen_fail": N_("无法共享屏幕：请在浏览器提示时选择“允许”。"),
    "check_screen_hint": N_("点击“测试屏幕共享”，在弹出的窗口中选择要共享的屏幕。"),
    "check_net_running": N_("正在测试网络…"),
    "check_net_good": N_("网络良好"),
    "check_net_fair": N_("网络一般：视频可能不够清晰，可以正常办理。"),
    "check_net_poor": N_("网络较差：建议靠近路由器、关闭其他下载，必要时只用语音办理。"),
    "check_net_fail": N_("连不上服务器：请检查网线或无线网络，稍后再试。"),
    "net_result": N_("往返 %(rtt)s 毫秒，丢包 %(loss)s%%"),
    "items_none": N_("没有找到匹配的事项"),
    "id_invalid": N_("身份证号码不正确：请核对（18 位，最后一位可能是 X）"),
    "id_ok": N_("身份证号码校验通过"),
    "phone_invalid": N_("手机号码应为 11 位数字"),
    "pick_item": N_("请先选择要办理的事项"),
    "need_name": N_("请填写申请人姓名"),
    "need_consent": N_("请申请人阅读并同意录音录像告知"),
    "queue_position": N_("前面还有 %(ahead)s 位"),
    "queue_first": N_("您排在第一位，马上为您接通"),
    "queue_wait": N_("预计等待约 %(minutes)s 分钟"),
    "queue_wait_short": N_("预计等待不到 1 分钟"),
    "ringing": N_("坐席正在接听…"),
    "closed_hours": N_("当前不在办公时间。"),
    "opens_at": N_("窗口开放时间：%(when)s"),
    "nobody": N_("暂时没有坐席在线。"),
    "callback_sent": N_("已登记回呼，坐席会尽快呼叫本站。"),
    "in_call": N_("通话中"),
    "call_ended": N_("通话已结束"),
    "ended_reason_completed": N_("办理结束"),
    "ended_reason_cancelled": N_("已取消呼叫"),
    "ended_reason_abandoned": N_("等待时间过长，呼叫已结束，请稍后再试或登记回呼"),
    "ended_reason_no_agent": N_("暂时没有坐席接听，请稍后再试或登记回呼"),
    "ended_reason_outlet_lost": N_("本站网络中断时间过长，通话已结束"),
    "ended_reason_agent_lost": N_("坐席网络中断，通话已结束"),
    "ended_reason_failed": N_("通话失败，请重试"),
    "quality_good": N_("网络良好"),
    "quality_fair": N_("网络一般"),
    "quality_poor": N_("网络差"),
    "quality_bad": N_("网络很差"),
    "ladder_0": N_("画面清晰度正常"),
    "ladder_1": N_("网络变差：已降低摄像头清晰度"),
    "ladder_2": N_("网络很差：已暂停摄像头，只传屏幕"),
    "ladder_3": N_("网络极差：只保留语音"),
    "ladder_up": N_("网络好转：已恢复画面"),
    "remote_ladder_1": N_("对方网络变差：画面清晰度降低"),
    "remote_ladder_2": N_("对方网络很差：摄像头已暂停"),
    "remote_ladder_3": N_("对方网络极差：只有语音"),
    "remote_ladder_0": N_("对方网络已恢复"),
    "share_start": N_("共享屏幕"),
    "share_stop": N_("停止共享"),
    "mute": N_("静音"),
    "unmute": N_("取消静音"),
    "camera_switched": N_("已切换摄像头"),
    "camera_single": N_("只有一个摄像头"),
    "chat_me": N_("我"),
    "chat_them": N_("对方"),
    "rating_thanks": N_("感谢您的评价！"),
    "rating_pick": N_("请选择一个评价"),
    "error": N_("出错了："),
    "timeout": N_("服务器没有及时响应，请重试"),
    "presence_available": N_("空闲"),
    "presence_busy": N_("通话中"),
    "presence_away": N_("暂离"),
    "presence_offline": N_("离线"),
    "incoming": N_("新呼叫！"),
    "queue_empty": N_("当前没有排队的呼叫"),
    "callbacks_empty": N_("没有回呼请求"),
    "priority_high": N_("优先"),
    "priority_normal": N_("普通"),
    "take": N_("接听"),
    "call_back": N_("回呼"),
    "snapshot_taken": N_("已截图"),
    "waiting_seconds": N_("%(s)s 秒"),
    "waiting_minutes": N_("%(m)s 分 %(s)s 秒"),
    "no_calls": N_("当前没有通话"),
    "decision": N_("坐席处理结果："),
    "media_failed": N_("音视频连接失败，正在重试…"),
    "screen_label": N_("对方屏幕"),
    "error_outlet_busy": N_("本站已有一个呼叫在进行，请先结束它"),
    "error_desk_closed": N_("窗口现在不办公"),
    "error_unavailable_item": N_("这个事项现在不能办理"),
    "error_taken": N_("这个呼叫已被其他坐席接听"),
    "error_queue_empty": N_("当前没有排队的呼叫"),
    "error_agent_busy": N_("您正在通话中，请先结束当前通话"),
    "error_timeout": N_("服务器没有及时响应，请重试"),
    "error_unauthenticated": N_("登录已失效，请重新登录"),
    "error_invalid_input": N_("填写的内容有误，请检查后再试"),
    "error_forbidden": N_("没有权限执行这个操作"),
    "error_internal": N_("服务器出错了，请稍后再试"),
    "requeued": N_("坐席网络中断，已为您优先重新排队"),
    "remote_lost": N_("对方网络中断，正在等待对方重新连接…"),
    "new_in_queue": N_("有新的呼叫在排队"),
    "outlet_ringing": N_("正在呼叫服务站，等待对方接听…"),
}


def js_messages(request: web.Request) -> dict[str, str]:
    """Every browser string, translated into the request's language."""
    catalog = translations(request_locale(request))
    return {key: catalog.gettext(source) for key, source in JS_MESSAGES.items()}
