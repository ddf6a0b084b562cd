/** English and Arabic UI text; the choice sets `<html lang dir>` and is remembered. */

export type Lang = "en" | "ar";

const LANG_KEY = "realtime.lang";

const en = {
  appTitle: "Realtime tasks",
  "status.connected": "Connected",
  "status.connecting": "Connecting…",
  "status.reconnecting": "Reconnecting…",
  "status.offline": "Offline",
  "transport.websocket": "WebSocket",
  "transport.sse": "Server-Sent Events",
  "transport.poll": "long-polling",
  via: "via {transport}",
  signedInAs: "Signed in as {name}",
  "online.title": "Online now ({count})",
  "online.empty": "Nobody is online.",
  "online.you": "you",
  signOut: "Sign out",
  switchLanguage: "العربية",
  "signIn.title": "Sign in",
  "signIn.label": "Access token",
  "signIn.hint": "Paste the token printed by `make run` or issued by your identity provider.",
  "signIn.submit": "Sign in",
  "signIn.invalid": "That does not look like a token.",
  "signIn.expired": "The token has expired. Paste a new one.",
  "signIn.rejected": "The server did not accept the token. Paste a new one.",
  "tasks.title": "Tasks",
  "tasks.empty": "No tasks yet.",
  "tasks.new": "New task",
  loading: "Loading…",
  refresh: "Refresh",
  "field.title": "Title",
  "field.taskType": "Type",
  "field.result": "Result",
  "field.name": "Name",
  "field.cron": "Cron expression",
  create: "Create",
  execute: "Execute",
  "taskType.daily": "Daily",
  "taskType.weekly": "Weekly",
  "taskType.monthly": "Monthly",
  "taskType.ad-hoc": "Ad hoc",
  "taskStatus.pending": "Pending",
  "taskStatus.completed": "Completed",
  "taskStatus.failed": "Failed",
  "taskStatus.skipped": "Skipped",
  runs: "Runs: {count}",
  owner: "By {name}",
  "schedules.title": "Schedules",
  "schedules.empty": "No schedules yet.",
  "schedules.new": "New schedule",
  "schedule.enabled": "On",
  "schedule.disabled": "Off",
  "toast.task_created": "{user} created the task “{title}”",
  "toast.task_executed": "{user} executed “{title}”: {result}",
  "toast.task_updated": "{user} changed “{title}”",
  "toast.task_deleted": "{user} deleted “{title}”",
  "toast.schedule_created": "{user} created the schedule “{name}”",
  "toast.schedule_updated": "{user} changed the schedule “{name}”",
  "toast.schedule_deleted": "{user} deleted the schedule “{name}”",
  taskNumber: "task #{id}",
  scheduleNumber: "schedule #{id}",
  dismiss: "Dismiss",
  notifications: "Notifications",
  error: "Error: {message}",
};

export type MessageKey = keyof typeof en;

const ar: Record<MessageKey, string> = {
  appTitle: "المهام الفورية",
  "status.connected": "متصل",
  "status.connecting": "جارٍ الاتصال…",
  "status.reconnecting": "جارٍ إعادة الاتصال…",
  "status.offline": "غير متصل",
  "transport.websocket": "WebSocket",
  "transport.sse": "Server-Sent Events",
  "transport.poll": "الاستطلاع الطويل (long-polling)",
  via: "عبر {transport}",
  signedInAs: "مسجّل الدخول باسم {name}",
  "online.title": "المتصلون الآن ({count})",
  "online.empty": "لا أحد متصل.",
  "online.you": "أنت",
  signOut: "تسجيل الخروج",
  switchLanguage: "English",
  "signIn.title": "تسجيل الدخول",
  "signIn.label": "رمز الدخول",
  "signIn.hint": "الصق الرمز الذي يطبعه `make run` أو الذي أصدره مزوّد الهوية.",
  "signIn.submit": "دخول",
  "signIn.invalid": "هذا لا يبدو رمزًا صالحًا.",
  "signIn.expired": "انتهت صلاحية الرمز. الصق رمزًا جديدًا.",
  "signIn.rejected": "لم يقبل الخادم الرمز. الصق رمزًا جديدًا.",
  "tasks.title": "المهام",
  "tasks.empty": "لا توجد مهام بعد.",
  "tasks.new": "مهمة جديدة",
  loading: "جارٍ التحميل…",
  refresh: "تحديث",
  "field.title": "العنوان",
  "field.taskType": "النوع",
  "field.result": "النتيجة",
  "field.name": "الاسم",
  "field.cron": "تعبير cron",
  create: "إنشاء",
  execute: "تنفيذ",
  "taskType.daily": "يومية",
  "taskType.weekly": "أسبوعية",
  "taskType.monthly": "شهرية",
  "taskType.ad-hoc": "عند الحاجة",
  "taskStatus.pending": "قيد الانتظار",
  "taskStatus.completed": "مكتملة",
  "taskStatus.failed": "فشلت",
  "taskStatus.skipped": "تم تخطيها",
  runs: "مرات التنفيذ: {count}",
  owner: "بواسطة {name}",
  "schedules.title": "الجداول",
  "schedules.empty": "لا توجد جداول بعد.",
  "schedules.new": "جدول جديد",
  "schedule.enabled": "مفعّل",
  "schedule.disabled": "معطّل",
  "toast.task_created": "أنشأ {user} المهمة «{title}»",
  "toast.task_executed": "نفّذ {user} «{title}»: {result}",
  "toast.task_updated": "عدّل {user} «{title}»",
  "toast.task_deleted": "حذف {user} «{title}»",
  "toast.schedule_created": "أنشأ {user} الجدول «{name}»",
  "toast.schedule_updated": "عدّل {user} الجدول «{name}»",
  "toast.schedule_deleted": "حذف {user} الجدول «{name}»",
  taskNumber: "المهمة رقم {id}",
  scheduleNumber: "الجدول رقم {id}",
  dismiss: "إغلاق",
  notifications: "الإشعارات",
  error: "خطأ: {message}",
};

const catalogs: Record<Lang, Record<MessageKey, string>> = { en, ar };

export type Translate = (key: MessageKey, values?: Record<string, string | number>) => string;

/**
 * A translator for one language. Substituted values are wrapped in Unicode isolates
 * (FSI … PDI) so an Arabic name inside English text (or the reverse) keeps its direction.
 */
export function translator(lang: Lang): Translate {
  const catalog = catalogs[lang];
  return (key, values) =>
    catalog[key].replace(/\{(\w+)\}/g, (match, name: string) =>
      values && name in values ? `\u2068${String(values[name])}\u2069` : match,
    );
}

export function isLang(value: unknown): value is Lang {
  return value === "en" || value === "ar";
}

/** `?lang=` first, then the remembered choice, then the browser's language. */
export function initialLang(search: string, storage: Pick<Storage, "getItem"> | null, browser: string): Lang {
  const fromUrl = new URLSearchParams(search).get("lang");
  if (isLang(fromUrl)) return fromUrl;
  let stored: string | null = null;
  try {
    stored = storage?.getItem(LANG_KEY) ?? null;
  } catch {
    stored = null;
  }
  if (isLang(stored)) return stored;
  return browser.toLowerCase().startsWith("ar") ? "ar" : "en";
}

export function rememberLang(lang: Lang, storage: Pick<Storage, "setItem"> | null): void {
  try {
    storage?.setItem(LANG_KEY, lang);
  } catch {
    // Not remembered, still applied.
  }
}

/** Sets `<html lang dir>` and the page title. */
export function applyLang(lang: Lang, root: HTMLElement = document.documentElement): void {
  root.lang = lang;
  root.dir = lang === "ar" ? "rtl" : "ltr";
  document.title = catalogs[lang].appTitle;
}
