"""The console's messages in zh-CN and English, and ``CATALOG``: these merged with the other pages'.

console-b's pages keep their messages in ``powergate.web.console._i18n_b`` and the batch and billing pages in
``_i18n_batch``, each as ``MESSAGES`` (same shape); they are merged here. A key defined twice is a programmer
error (``Catalog.merged`` asserts), and so is a key missing a language (``Catalog`` asserts at import), so a page
never shows a missing translation.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from powergate.web.i18n import Catalog


def _m(en: str, zh: str) -> dict[str, str]:
    return {"en": en, "zh-CN": zh}


MESSAGES: dict[str, dict[str, str]] = {
    "app.name": _m("PowerGate", "PowerGate 预付费电能管理"),
    "nav.label": _m("Main menu", "主菜单"),
    "nav.dashboard": _m("Dashboard", "仪表盘"),
    "nav.monitor": _m("Monitoring", "房间监控"),
    "nav.accounts": _m("Accounts", "账户"),
    "nav.tariffs": _m("Tariffs", "电价"),
    "nav.finance": _m("Finance", "财务"),
    "nav.reports": _m("Reports", "报表"),
    "nav.alarms": _m("Alarms", "告警"),
    "nav.audit": _m("Audit", "审计"),
    "nav.users": _m("Users", "用户"),
    "nav.logout": _m("Log out", "退出登录"),
    "role.admin": _m("Administrator", "管理员"),
    "role.operator": _m("Operator", "运维员"),
    "role.finance": _m("Finance", "财务"),
    "role.viewer": _m("Viewer", "只读"),
    "role.tenant": _m("Tenant", "租户"),
    # states of a room tile
    "state.no_account": _m("No account", "未开户"),
    "state.offline": _m("Offline", "离线"),
    "state.tripped": _m("Tripped", "已分闸"),
    "state.protect": _m("Power-protect", "保电"),
    "state.low": _m("Low balance", "余额不足"),
    "state.normal": _m("Normal", "正常"),
    "account_state.pre_staged": _m("pre-staged", "预开户"),
    "account_state.open": _m("open", "已开户"),
    "account_state.closed": _m("closed", "已销户"),
    # fields
    "field.site": _m("Site", "站点"),
    "field.building": _m("Building", "楼栋"),
    "field.floor": _m("Floor", "楼层"),
    "field.state": _m("State", "状态"),
    "field.account": _m("Account", "账户"),
    "field.balance": _m("Balance", "余额"),
    "field.meter": _m("Meter", "电表"),
    "field.tariff": _m("Tariff", "电价方案"),
    "field.time": _m("Time", "时间"),
    "field.reason": _m("Reason", "原因"),
    # filters
    "filter.all": _m("All", "全部"),
    "filter.search": _m("Search", "搜索"),
    "filter.search_hint": _m("room, account, name, meter", "房号、户号、姓名、表号"),
    "filter.apply": _m("Apply", "筛选"),
    # dashboard
    "dashboard.summary": _m("Summary", "概览"),
    "dashboard.no_sites": _m("No sites yet: add a site and its rooms first.", "还没有站点：请先添加站点和房间。"),
    "dashboard.meters_online": _m("Meters online", "在线电表"),
    "dashboard.meters_offline": _m("Meters offline", "离线电表"),
    "dashboard.tripped": _m("Tripped", "已分闸"),
    "dashboard.low_balance": _m("Low balance", "余额不足"),
    "dashboard.today_kwh": _m("Today's energy", "今日用电"),
    "dashboard.revenue_today": _m("Payments today", "今日收款"),
    "dashboard.payments": _m("payments", "笔"),
    "dashboard.by_site": _m("By site", "按站点"),
    "dashboard.rooms": _m("Rooms", "房间"),
    "dashboard.hint": _m(
        "Every number opens the monitoring grid with that filter. Today's energy counts meters frozen at midnight.",
        "点击任一数字即可打开对应筛选的房间监控。今日用电只统计已完成零点冻结的电表。",
    ),
    # monitoring
    "monitor.rooms": _m("Rooms", "房间"),
    "monitor.live": _m("Live: refreshes every 5 s", "实时：每 5 秒刷新"),
    "monitor.paused": _m("Paused while the tab is hidden", "页面隐藏时暂停刷新"),
    "monitor.updated": _m("Updated", "更新于"),
    "monitor.none": _m("No rooms match these filters.", "没有符合条件的房间。"),
    "monitor.truncated": _m(
        "Too many rooms to show at once: choose a building or a state.", "房间太多，无法一次显示：请选择楼栋或状态。"
    ),
    # room detail
    "room.title": _m("Room", "房间"),
    "room.supply": _m("Supply", "供电"),
    "room.supply_on": _m("On", "供电中"),
    "room.supply_off": _m("Cut off", "已断电"),
    "room.temporary_until": _m("temporary supply until", "临时供电至"),
    "room.today_kwh": _m("Today's energy", "今日用电"),
    "room.today_cost": _m("Today's cost", "今日电费"),
    "room.tou": _m("Time-of-use split", "分时电量"),
    "room.tou_none": _m(
        "No band registers yet (the meter reports totals only, or no freeze).",
        "暂无分时数据（电表仅上报总电量，或尚未冻结）。",
    ),
    "room.band": _m("Band", "时段"),
    "room.today": _m("Today", "今日"),
    "room.this_month": _m("This month", "本月"),
    "room.meters": _m("Meters", "电表"),
    "room.no_meters": _m("No meter is installed in this room.", "该房间未安装电表。"),
    "room.link": _m("Link", "通信"),
    "room.online": _m("Online", "在线"),
    "room.relay": _m("Relay", "继电器"),
    "room.relay_open": _m("open (off)", "分闸"),
    "room.relay_closed": _m("closed (on)", "合闸"),
    "room.register": _m("Register", "表码"),
    "room.last_reading": _m("Last reading", "最近抄读"),
    "room.curves": _m("Load curves", "负荷曲线"),
    "room.last_24h": _m("last 24 hours", "最近 24 小时"),
    "room.commands": _m("Commands", "指令"),
    "room.no_commands": _m("No commands yet.", "暂无指令。"),
    "room.command": _m("Command", "指令"),
    "room.command_state": _m("State", "状态"),
    "room.attempts": _m("Attempts", "尝试"),
    "room.requested_by": _m("Requested by", "发起人"),
    "room.result": _m("Result", "结果"),
    "room.events": _m("Meter events", "电表事件"),
    "room.no_events": _m("No events.", "暂无事件。"),
    "room.event": _m("Event", "事件"),
    "room.detail": _m("Detail", "详情"),
    "band.sharp": _m("Sharp", "尖"),
    "band.peak": _m("Peak", "峰"),
    "band.flat": _m("Flat", "平"),
    "band.valley": _m("Valley", "谷"),
    "curve.power": _m("Active power (W)", "有功功率 (W)"),
    "curve.voltage": _m("Voltage (V)", "电压 (V)"),
    "curve.current": _m("Current (A)", "电流 (A)"),
    "curve.pf": _m("Power factor", "功率因数"),
    "curve.empty": _m(
        "No samples in the last 24 hours (the head-end stores them when it reads instant values).",
        "最近 24 小时没有采样（集中器抄读瞬时量时才会保存）。",
    ),
    "event.cover_open": _m("Cover opened", "开表盖"),
    "event.terminal_cover_open": _m("Terminal cover opened", "开端钮盖"),
    "event.reverse_current": _m("Reverse current", "电流反向"),
    "event.abnormal_current": _m("Abnormal current", "电流异常"),
    "event.voltage_loss": _m("Voltage loss", "失压"),
    "event.current_loss": _m("Current loss", "失流"),
    "event.magnetic_interference": _m("Magnetic interference", "磁场干扰"),
    "event.overload_trip": _m("Overload trip", "过载跳闸"),
    "event.power_fail": _m("Power failure", "停电"),
    "event.power_restore": _m("Power restored", "来电"),
    "command.trip": _m("Trip", "分闸"),
    "command.close": _m("Close", "合闸"),
    "command.close_allowed": _m("Allow close", "允许合闸"),
    "command.protect_on": _m("Power-protect on", "保电"),
    "command.protect_off": _m("Power-protect off", "解除保电"),
    "command.recharge": _m("Recharge", "充值"),
    "command.set_alarms": _m("Alarm amounts", "报警金额"),
    "command.set_power_limit": _m("Power limit", "功率限值"),
    "command.set_prices": _m("Prices", "电价"),
    "command.time_sync": _m("Time sync", "校时"),
    "command_state.pending": _m("queued", "排队中"),
    "command_state.sent": _m("sent", "已下发"),
    "command_state.acked": _m("acknowledged", "已确认"),
    "command_state.verified": _m("verified", "已验证"),
    "command_state.failed": _m("failed", "失败"),
    "command_state.expired": _m("expired", "已过期"),
    "command_state.cancelled": _m("cancelled", "已取消"),
    # remote operations
    "ops.title": _m("Remote operations", "远程操作"),
    "ops.hint": _m(
        "Every operation needs a reason and a confirmation; it is recorded in the audit log.",
        "每项操作都需要填写原因并确认，并记入审计日志。",
    ),
    "ops.reason_hint": _m("why (required, audited)", "原因（必填，记入审计）"),
    "ops.next": _m("Continue…", "下一步…"),
    "ops.confirm_title": _m("Please confirm", "请确认"),
    "ops.confirm": _m("Confirm", "确认执行"),
    "ops.cancel": _m("Cancel", "取消"),
    "ops.done": _m("Done", "已完成"),
    "ops.failed": _m("Not done", "未执行"),
    "ops.commands_queued": _m("Commands queued", "已排队指令"),
    "ops.follow": _m(
        "Their progress (queued → sent → verified) updates below.", "下方指令列表会实时显示进度（排队 → 下发 → 验证）。"
    ),
    "ops.trip": _m("Trip (cut supply)", "远程分闸"),
    "ops.trip_hint": _m("Cuts the supply of every meter in this room.", "断开本房间所有电表的供电。"),
    "ops.close": _m("Close (restore supply)", "远程合闸"),
    "ops.close_hint": _m("Restores the supply of every meter in this room.", "恢复本房间所有电表的供电。"),
    "ops.recharge": _m("Recharge (cashier)", "售电（收银）"),
    "ops.refund": _m("Refund (cash)", "退电（现金退款）"),
    "ops.refund_hint": _m(
        "Paid back in cash at the counter; never below the credit limit.", "在柜台以现金退还；余额不得低于限额。"
    ),
    "ops.open_account": _m("Open account", "开户"),
    "ops.set_tariff": _m("Set tariff", "设置电价"),
    "ops.alarm_amounts": _m("Alarm amounts", "报警金额"),
    "ops.alarm1": _m("Alarm amount 1", "报警金额 1"),
    "ops.alarm2": _m("Alarm amount 2", "报警金额 2"),
    "ops.temporary_supply": _m("Temporary supply", "临时供电"),
    "ops.until": _m("Until", "截止时间"),
    "ops.power_protect": _m("Power-protect", "保电"),
    "ops.protect_mode": _m("Power-protect", "保电"),
    "ops.protect_on": _m("On (never trip)", "开启（不分闸）"),
    "ops.protect_off": _m("Off", "关闭"),
    "ops.amount": _m("Amount", "金额"),
    "ops.method": _m("Paid by", "支付方式"),
    "ops.cash": _m("Cash", "现金"),
    "ops.card": _m("Card", "刷卡"),
    "ops.receipt_no": _m("Receipt number", "收据号"),
    "ops.receipt_hint": _m("blank: one is made up", "留空则自动生成"),
    "ops.room": _m("Room", "房间"),
    "ops.meters": _m("Meters", "电表"),
    "ops.queued": _m("Queued for the meters; the head-end delivers them.", "已为电表排队，集中器将下发。"),
    "ops.recharged": _m("Credited", "已充值"),
    "ops.refunded": _m("Refunded", "已退款"),
    "ops.opened": _m("Account opened", "已开户"),
    "ops.tariff_set": _m("Tariff set", "电价已设置"),
    "ops.policy_set": _m("Policy changed", "策略已修改"),
    "ops.no_account": _m("This room has no account.", "该房间没有账户。"),
    "ops.no_meters": _m("This room has no meter.", "该房间没有电表。"),
    "ops.unknown": _m("Unknown operation.", "未知操作。"),
}


def _messages_of(module_name: str) -> Mapping[str, Mapping[str, str]]:
    """The ``MESSAGES`` of another console module (console-b's pages, the batch and billing pages)."""
    module = importlib.import_module(module_name)
    messages: Mapping[str, Mapping[str, str]] = module.MESSAGES
    return messages


CATALOG = (
    Catalog(MESSAGES)
    .merged(Catalog(_messages_of("powergate.web.console._i18n_b")))
    .merged(Catalog(_messages_of("powergate.web.console._i18n_batch")))
)
