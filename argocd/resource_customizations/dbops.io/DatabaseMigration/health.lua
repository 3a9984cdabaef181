-- Argo CD health check for dbops.io/v1alpha1 DatabaseMigration.
--
-- One object is one run of the migration runbook, so health follows the run:
--   Healthy      the run Succeeded
--   Progressing  no status yet, the operator has not seen the latest generation, the run is in
--                flight (including RollingBack), or it waits for approval
--   Degraded     the run Failed or RolledBack, or the operator reports Stalled=True
-- A sync wave holding a DatabaseMigration therefore waits until the migration has finished, and fails the
-- sync when it did not succeed.
--
-- Only base and table functions are used: Argo CD runs health checks from argocd-cm without the string,
-- math and os libraries unless useOpenLibs is set.

local APPROVAL_ANNOTATION = "dbops.io/approved"

local RUNNING_PHASES = {
  Pending = true,
  Preflight = true,
  BackingUp = true,
  EnteringMaintenance = true,
  Migrating = true,
  Verifying = true,
  ExitingMaintenance = true,
  RollingBack = true,
}

local function health(status, message)
  return { status = status, message = message }
end

local function findCondition(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

local function nonEmpty(value)
  return value ~= nil and value ~= ""
end

-- The first non-empty message among the run's summary, a condition's message and a fallback.
local function messageFrom(status, condition, fallback)
  if nonEmpty(status.message) then
    return status.message
  end
  if condition ~= nil and nonEmpty(condition.message) then
    return condition.message
  end
  return fallback
end

local function isApproved(metadata)
  return metadata.annotations ~= nil and metadata.annotations[APPROVAL_ANNOTATION] == "true"
end

local function approvalMessage(metadata)
  local namespaceFlag = ""
  if nonEmpty(metadata.namespace) then
    namespaceFlag = "-n " .. metadata.namespace .. " "
  end
  return "Waiting for approval: run the 'approve' action, or kubectl " .. namespaceFlag ..
    "annotate dbmig " .. metadata.name .. " " .. APPROVAL_ANNOTATION .. "=true"
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  return health("Progressing", "Waiting for the operator to start the migration")
end

-- Until the operator has observed the latest spec, everything else in status describes an older one.
-- tonumber: Argo CD may hand integers over as strings (json.Number).
local generation = tonumber(obj.metadata.generation)
local observedGeneration = tonumber(status.observedGeneration)
if generation ~= nil and observedGeneration ~= nil and observedGeneration < generation then
  return health("Progressing", "Waiting for the operator to observe generation " .. generation ..
    " (status is for generation " .. observedGeneration .. ")")
end

local phase = status.phase

local stalled = findCondition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" and phase ~= "Succeeded" then
  -- The condition explains why the operator cannot make progress; prefer it over the summary.
  if nonEmpty(stalled.message) then
    return health("Degraded", stalled.message)
  end
  return health("Degraded", messageFrom(status, nil, "Migration is stalled in phase " .. phase))
end

if phase == "Succeeded" then
  return health("Healthy", messageFrom(status, findCondition(status.conditions, "Ready"), "Migration succeeded"))
end

if phase == "Failed" then
  return health("Degraded", messageFrom(status, findCondition(status.conditions, "Ready"), "Migration failed"))
end

if phase == "RolledBack" then
  return health("Degraded", messageFrom(status, findCondition(status.conditions, "RolledBack"),
    "Migration failed and was rolled back"))
end

if phase == "AwaitingApproval" then
  if isApproved(obj.metadata) then
    return health("Progressing", "Approved; waiting for the operator to start the migration")
  end
  return health("Progressing", approvalMessage(obj.metadata))
end

if RUNNING_PHASES[phase] then
  return health("Progressing", messageFrom(status, findCondition(status.conditions, "Reconciling"),
    "Migration in phase " .. phase))
end

return health("Unknown", "Unrecognised phase " .. phase .. "; is this health check older than the operator?")
